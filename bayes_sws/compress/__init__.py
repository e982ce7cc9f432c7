"""Compression: quantisation, storage accounting (Han et al. 2016), the Deep
Compression baseline and the paper's pipeline (Ullrich et al. 2017).

Modules by concern: :mod:`.params` (which tensors are compressed), :mod:`.quantize`
(merge and hard-assign), :mod:`.codebook` (fine-tune shared values), :mod:`.surgery`
(remove dead units, prune weak ones), :mod:`.coding` (Huffman, Golomb-Rice), :mod:`.storage` (bit counts),
:mod:`.plots`, :mod:`.baseline` and :mod:`.pipeline`.
"""

from .codebook import CodebookFinetune, finetune_codebook
from .coding import (
    entropy_bits,
    huffman_code,
    huffman_code_lengths,
    relative_index_fillers,
    rice_bits,
    rice_parameter,
)
from .fileformat import (
    CompressedFileError,
    CompressedFileInfo,
    SavedModel,
    StoredTensor,
    decode_compressed,
    describe_compressed,
    encode_compressed,
    load_compressed,
    save_compressed,
)
from .params import check_param_names, default_param_names, layer_kind
from .plots import plot_layer_sparsity, plot_weights_before_after
from .quantize import QuantizeResult, merge_components, quantize, quantize_groups
from .storage import (
    BITS_PER_FLOAT,
    DEFAULT_INDEX_BITS,
    LayerStorage,
    StorageReport,
    storage_report,
    storage_unit_orders,
    stored_network,
)
from .surgery import (
    DeadUnitRemoval,
    HiddenUnits,
    UnitPruning,
    hidden_unit_layers,
    permute_units,
    prune_units,
    remove_dead_units,
)

__all__ = [
    "BITS_PER_FLOAT",
    "CodebookFinetune",
    "CompressedFileError",
    "CompressedFileInfo",
    "DEFAULT_INDEX_BITS",
    "DeadUnitRemoval",
    "HiddenUnits",
    "LayerStorage",
    "QuantizeResult",
    "SavedModel",
    "StorageReport",
    "StoredTensor",
    "UnitPruning",
    "check_param_names",
    "decode_compressed",
    "default_param_names",
    "describe_compressed",
    "encode_compressed",
    "entropy_bits",
    "finetune_codebook",
    "hidden_unit_layers",
    "huffman_code",
    "huffman_code_lengths",
    "layer_kind",
    "load_compressed",
    "merge_components",
    "permute_units",
    "plot_layer_sparsity",
    "plot_weights_before_after",
    "prune_units",
    "quantize",
    "quantize_groups",
    "relative_index_fillers",
    "remove_dead_units",
    "rice_bits",
    "rice_parameter",
    "save_compressed",
    "storage_report",
    "storage_unit_orders",
    "stored_network",
]
