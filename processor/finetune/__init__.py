"""``processor finetune``: train a LoRA on the UNet of a Stable Diffusion 1.x/2.x model.

Modules, one job each:

- ``location``   where training data and results live: a local folder or a bucket prefix, both as
                 an ``ObjectStore`` plus a key prefix, so one code path serves ``--out`` and the bucket
- ``data``       the training set: decoded and validated like inputs, captioned, bad files skipped
- ``record``     the training record (pydantic): base model, hyperparameters, dataset, loss per step
- ``checkpoint`` checkpoints every N steps (LoRA, optimizer, RNG, record) and finding the last one
- ``train``      the recipe: diffusers' LoRA training (peft on the UNet attention projections)

The ``finetune`` command itself is ``processor.cli.finetune``.

Torch, diffusers and peft are imported by ``train`` and ``checkpoint`` only.
"""
