"""Compression: quantisation, storage accounting (Han et al. 2016), the Deep
Compression baseline and the paper's pipeline (Ullrich et al. 2017)."""

from .quantize import (  # noqa: F401
    BITS_PER_FLOAT,
    DEFAULT_INDEX_BITS,
    CodebookFinetune,
    DeadUnitRemoval,
    LayerStorage,
    QuantizeResult,
    StorageReport,
    default_param_names,
    entropy_bits,
    finetune_codebook,
    huffman_code,
    huffman_code_lengths,
    layer_kind,
    merge_components,
    plot_layer_sparsity,
    plot_weights_before_after,
    quantize,
    relative_index_fillers,
    remove_dead_units,
    storage_report,
    stored_network,
)

# isort: split
# fileformat imports names from this package, so it comes after .quantize
from .fileformat import (
    CompressedFileError,
    SavedModel,
    decode_compressed,
    encode_compressed,
    load_compressed,
    save_compressed,
)

__all__ = [
    "BITS_PER_FLOAT",
    "CodebookFinetune",
    "CompressedFileError",
    "DEFAULT_INDEX_BITS",
    "DeadUnitRemoval",
    "LayerStorage",
    "QuantizeResult",
    "SavedModel",
    "StorageReport",
    "decode_compressed",
    "default_param_names",
    "encode_compressed",
    "entropy_bits",
    "finetune_codebook",
    "huffman_code",
    "huffman_code_lengths",
    "layer_kind",
    "load_compressed",
    "merge_components",
    "plot_layer_sparsity",
    "plot_weights_before_after",
    "quantize",
    "relative_index_fillers",
    "remove_dead_units",
    "save_compressed",
    "storage_report",
    "stored_network",
]
