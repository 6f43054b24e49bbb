"""SFT with packed rows kept apart as batch rows (for non-varlen attention), and TRL's private token count."""

from __future__ import annotations

from koaml.modeling import attention_of
from koaml.packing import VARLEN_ATTENTION


def sft_trainer(**kwargs):
    """A ``trl.SFTTrainer`` (same arguments) that packs into separate rows unless the attention is varlen.

    TRL's ``bfd`` packing is always padding-free: a batch becomes ONE flattened row, and TRL refuses a custom
    collator then. That is right for flash-attention (varlen kernels), but with sdpa/eager attention spans the
    whole flattened batch, its cost growing with (batch * max_length)^2. So here each packed row stays a batch
    row (up to max_length, several sequences whose ``position_ids`` restart at 0, right-padded to the longest row)
    and no attention mask is passed: transformers' built-in architectures then derive a per-sequence causal
    (block-diagonal) mask from the ``position_ids`` (``masking_utils.find_packed_sequence_indices``; only when the
    attention mask is None). Padding positions (position 0, label -100) come after every real token, which the
    causal mask keeps from seeing them. TRL counts a mask-less batch's tokens as ``position_ids.size(1)`` (one
    row), so the collator also hands the real token count to ``compute_loss`` for the ``num_tokens`` metric.
    """
    import torch
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class PackedRowsCollator(DataCollatorForLanguageModeling):
        def torch_call(self, examples):
            batch = super().torch_call(examples)  # padded rows, position_ids from the packed seq_lengths
            real = batch.pop("attention_mask")  # its presence would turn transformers' packed-sequence masking off
            batch["labels"][batch["position_ids"] == 0] = -100  # no row's first token is predicted from another's
            batch["num_real_tokens"] = int(real.sum())
            return batch

    class Trainer(SFTTrainer):
        def __init__(self, **kw):
            super().__init__(**kw)
            attn = attention_of(self.model)
            if self.padding_free and self.args.packing and attn not in VARLEN_ATTENTION:
                flat = self.data_collator
                self.data_collator = PackedRowsCollator(
                    pad_token_id=flat.pad_token_id, return_position_ids=True, pad_to_multiple_of=flat.pad_to_multiple_of
                )

        def compute_loss(self, model, inputs, *args, **kw):
            real = inputs.pop("num_real_tokens", None)
            counted = trained_token_count(self)
            result = super().compute_loss(model, inputs, *args, **kw)
            if real is not None and trained_token_count(self) != counted:  # TRL counted position_ids.size(1)
                device = inputs["input_ids"].device
                real = int(self.accelerator.gather_for_metrics(torch.tensor([real], device=device)).sum())
                set_trained_token_count(self, counted + real)
            return result

    return Trainer(**kwargs)


# TRL keeps the count of trained tokens (the ``num_tokens`` metric) in private SFTTrainer attributes, with no
# public API to correct it; these two functions are the only place koaml touches them, and
# tests/test_trl_args_and_packing.py::test_trl_private_token_count_is_where_koaml_expects fails when a TRL release moves them.
def trained_token_count(trainer) -> int:
    """The tokens TRL has counted as trained so far."""
    return trainer._total_train_tokens


def set_trained_token_count(trainer, tokens: int) -> None:
    """Set TRL's count of trained tokens and the ``num_tokens`` metric it logs."""
    trainer._total_train_tokens = tokens
    trainer._metrics["train"]["num_tokens"] = [tokens]
