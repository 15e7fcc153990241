"""Holder of the fairseq ``common.user_dir`` package (kept alone in this folder).

fairseq imports a user dir by its folder name after putting the parent folder on ``sys.path``;
this folder therefore contains nothing but that package, so no other module becomes importable
under a top-level name.
"""

__all__: list[str] = []
