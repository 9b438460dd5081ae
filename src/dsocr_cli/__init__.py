"""dsocr: batch OCR with DeepSeek-OCR, from PDFs, images and directory trees to markdown, boxes and JSON."""

__version__ = "0.1.0"
