"""Helpers shared by every package of jaxcnn (the bottom layer: it imports no other package).

See :mod:`jaxcnn.utils.tree`: ``path_str``, ``tree_paths``, ``map_with_path``, ``count_params``,
``abstract_init``, ``tree_add``; :mod:`jaxcnn.utils.optional`: ``optional_import`` (a
module of an extra, or an ``ImportError`` naming the extra); :mod:`jaxcnn.utils.cache`:
``enable_compilation_cache`` (JAX's persistent compilation cache, keyed by machine).
"""

from jaxcnn.utils.cache import default_cache_dir, enable_compilation_cache
from jaxcnn.utils.optional import optional_import
from jaxcnn.utils.tree import (
    abstract_init,
    count_params,
    map_with_path,
    path_str,
    tree_add,
    tree_paths,
)

__all__ = [
    "abstract_init",
    "count_params",
    "default_cache_dir",
    "enable_compilation_cache",
    "map_with_path",
    "optional_import",
    "path_str",
    "tree_add",
    "tree_paths",
]
