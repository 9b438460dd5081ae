"""Config of the stand-in remote-code checkpoint (loaded by transformers' trust_remote_code path).

Importable under transformers 4.46.x (`PretrainedConfig`) and 5.x (`PreTrainedConfig`).
"""

try:
    from transformers import PreTrainedConfig as _BaseConfig
except ImportError:  # transformers 4.x
    from transformers import PretrainedConfig as _BaseConfig


class StubConfig(_BaseConfig):
    model_type = "deepseek_vl_v2"

    def __init__(self, hidden_size=8, **kwargs):
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
