"""Model weights: the Hugging Face fetches (``hub``), loading and sharing pipelines
(``loader.ModelLoader``), the safetensors rule (``safeweights``) and the GPU-path switches
(``accel``)."""
