"""Students: loading base models (encoders and causal LMs), cutting students out of a teacher by layers, measuring
importance and pruning widths. Shared helpers at the bottom (``_shared``), the models and decoders above them,
pruning above those, and the composer that builds a student (``_student``) on top.

Imports ``objectives._config`` and ``objectives.data``.
"""

from __future__ import annotations

from objectives._lazy import lazy_exports
from objectives.students._decoders import (
    CAUSAL_LMS,
    cut_decoder,
    decoder_layers,
    final_norm,
    lm_identity,
    load_causal_lm,
    load_lm_tokenizer,
    resolve_lm,
    scratch_decoder,
)
from objectives.students._models import (
    GGUF_MODELS,
    MODELS,
    dequantised_gguf,
    load_classifier,
    load_tokenizer,
    model_identity,
    name_labels,
    resolve_model,
    weights_hash,
)
from objectives.students._shared import (
    count_parameters,
    num_layers,
    quiet_transformers,
    renumbered_state,
    set_dropout,
    student_layers,
)

_LAZY = {
    "measure_importance": "._pruning",
    "Importance": "._pruning",
    "cached_importance": "._pruning",
    "calibration_batches": "._pruning",
    "decoder_importance": "._pruning",
    "prune_decoder": "._pruning",
    "prune_widths": "._pruning",
    "build_student": "._student",
    "add_adapter": "._adapters",
    "is_adapted": "._adapters",
    "merged": "._adapters",
    "save_adapter": "._adapters",
    "trainable_parameters": "._adapters",
    "end_fake_quantize": "._quantize",
    "fake_quantize": "._quantize",
    "fake_quantized": "._quantize",
    "quantization": "._quantize",
    "quantize": "._quantize",
    "quantized": "._quantize",
    "saved_size_mb": "._quantize",
    "kept_layers": "._student",
}
"""Names whose modules load torch: imported on first use."""

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "CAUSAL_LMS",
    "GGUF_MODELS",
    "MODELS",
    "Importance",
    "add_adapter",
    "build_student",
    "cached_importance",
    "calibration_batches",
    "count_parameters",
    "cut_decoder",
    "decoder_importance",
    "decoder_layers",
    "dequantised_gguf",
    "end_fake_quantize",
    "fake_quantize",
    "fake_quantized",
    "final_norm",
    "is_adapted",
    "kept_layers",
    "lm_identity",
    "load_causal_lm",
    "load_classifier",
    "load_lm_tokenizer",
    "load_tokenizer",
    "measure_importance",
    "merged",
    "model_identity",
    "name_labels",
    "num_layers",
    "prune_decoder",
    "prune_widths",
    "quantization",
    "quantize",
    "quantized",
    "quiet_transformers",
    "renumbered_state",
    "resolve_lm",
    "resolve_model",
    "save_adapter",
    "saved_size_mb",
    "scratch_decoder",
    "set_dropout",
    "student_layers",
    "trainable_parameters",
    "weights_hash",
]
