"""Sharing what a run trained: adapter folders, PEFT LoRA folders, the Hugging Face Hub.

One job per module: ``base_source`` (which base weights an adapter needs, recorded and
checked), ``adapter_export`` (the folder: tensors, adapter_config.json, classes),
``model_card`` (its README.md), ``adapter_load`` (a folder or Hub id back to a run's config
and weights), ``peft_lora`` (a LoRA run as a folder ``peft`` loads on ``transformers``'
VideoMAE), ``hub_push`` (the upload). The commands that use them are in
``aptune.commands.share``; this package imports nothing above ``config``.
"""
