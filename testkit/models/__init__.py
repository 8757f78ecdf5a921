"""Tiny random-weight models built offline from configs and saved like hub folders, so tests and
benchmarks load them through the production ``from_pretrained`` path. Nothing is downloaded.

- ``sd``: Stable Diffusion 1.x / instruct-pix2pix / SDXL (+ refiner) / inpainting, LoRA, ControlNet
- ``flow``: FLUX.1, FLUX.1 Kontext, Stable Diffusion 3, flow LoRAs
- ``qwen``: Qwen-Image-Edit
- ``adapter``: T2I-Adapters; ``ip_adapter``: IP-Adapters; ``control``: ControlNet preprocessors
- ``caption``: open_clip CLIP, BLIP, GIT, label lists, transformers CLIP
- ``segmenters``: SegFormer, ONNX salient-object models
"""
