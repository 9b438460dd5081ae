"""The only code that writes output: the OUT tree, stdout markdown, JSON, annotated pages and crops."""
