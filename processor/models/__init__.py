"""Model weights: every decision about which files, which revision, fetching, checking, caching
and safe loading lives here; the pipeline stages load through these modules and only compute.

``hub`` (Hugging Face fetches), ``pinned`` (files pinned by hash and fetched without the Hub:
the default segmenter), ``safeweights`` (the safetensors rule, pickle conversion),
``loader`` (loading and sharing diffusion pipelines, LoRAs, ControlNets), ``ip_adapter``,
``caption`` (the caption model), ``clip`` (the caption stage's open_clip model and the CLIP
scorer), ``segmenters`` (ONNX and transformers segmenters), ``preprocessors`` (ControlNet
preprocessor weights), ``pull_list`` (what ``processor models pull`` fetches) and ``accel`` (the
GPU-path switches). Imports only ``config``, ``errors``, ``log`` and ``store``."""
