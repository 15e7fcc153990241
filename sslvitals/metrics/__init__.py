"""Metric functions on ``(N, D)`` embeddings and ``(N,)`` labels (numpy or torch).

Families, one module each:

* :mod:`sslvitals.metrics.cluster`: k-means (FAISS / torch) and cluster-quality scores;
* :mod:`sslvitals.metrics.labels`: contingency counts, phone/cluster purity, PNMI, MI, NMI;
* :mod:`sslvitals.metrics.cca`: (PW)CCA similarity between representations;
* :mod:`sslvitals.metrics.rank`: RankMe, effective rank, RankMe-t, alpha-ReQ, stable rank,
  NESum, numerical rank, and all of them from a float64 Gram matrix.

Every public name is re-exported here. The families are imported on first use of one of
their names (PEP 562), so ``import sslvitals.metrics.rank`` does not load the k-means
backends, and one family failing to import does not break the others.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_FAMILIES: dict[str, tuple[str, ...]] = {
    "cluster": (
        "KMeansResult",
        "kmeans",
        "assign",
        "inertia",
        "davies_bouldin_score",
        "calinski_harabasz_score",
        "silhouette_score",
        "simplified_silhouette_score",
    ),
    "labels": (
        "contingency_matrix",
        "phone_purity",
        "cluster_purity",
        "pnmi",
        "mutual_information",
        "normalized_mutual_information",
        "purities_from_counts",
        "pnmi_from_counts",
        "mi_from_counts",
        "label_nmi_from_counts",
    ),
    "cca": (
        "cca_similarity",
        "cca_similarity_from_gram",
        "canonical_correlations",
        "one_hot",
    ),
    "rank": (
        "RANK_MEASURES",
        "rankme",
        "effective_rank",
        "rankme_t",
        "utterance_sums",
        "alpha_req",
        "stable_rank",
        "nesum",
        "numerical_rank",
        "singular_values_from_gram",
        "rank_measures_from_gram",
        "data_eps_of",
    ),
}

__all__ = [
    # cluster
    "KMeansResult",
    "kmeans",
    "assign",
    "inertia",
    "davies_bouldin_score",
    "calinski_harabasz_score",
    "silhouette_score",
    "simplified_silhouette_score",
    # labels
    "contingency_matrix",
    "phone_purity",
    "cluster_purity",
    "pnmi",
    "mutual_information",
    "normalized_mutual_information",
    "purities_from_counts",
    "pnmi_from_counts",
    "mi_from_counts",
    "label_nmi_from_counts",
    # cca
    "cca_similarity",
    "cca_similarity_from_gram",
    "canonical_correlations",
    "one_hot",
    # rank
    "RANK_MEASURES",
    "rankme",
    "effective_rank",
    "rankme_t",
    "utterance_sums",
    "alpha_req",
    "stable_rank",
    "nesum",
    "numerical_rank",
    "singular_values_from_gram",
    "rank_measures_from_gram",
    "data_eps_of",
]

_WHERE = {name: family for family, names in _FAMILIES.items() for name in names}

if TYPE_CHECKING:  # static analysers see ordinary imports
    from sslvitals.metrics.cca import (
        canonical_correlations,
        cca_similarity,
        cca_similarity_from_gram,
        one_hot,
    )
    from sslvitals.metrics.cluster import (
        KMeansResult,
        assign,
        calinski_harabasz_score,
        davies_bouldin_score,
        inertia,
        kmeans,
        silhouette_score,
        simplified_silhouette_score,
    )
    from sslvitals.metrics.labels import (
        cluster_purity,
        contingency_matrix,
        label_nmi_from_counts,
        mi_from_counts,
        mutual_information,
        normalized_mutual_information,
        phone_purity,
        pnmi,
        pnmi_from_counts,
        purities_from_counts,
    )
    from sslvitals.metrics.rank import (
        RANK_MEASURES,
        alpha_req,
        data_eps_of,
        effective_rank,
        nesum,
        numerical_rank,
        rank_measures_from_gram,
        rankme,
        rankme_t,
        singular_values_from_gram,
        stable_rank,
        utterance_sums,
    )


def __getattr__(name: str) -> Any:
    family = _WHERE.get(name)
    if family is None:
        raise AttributeError(f"module 'sslvitals.metrics' has no attribute {name!r}")
    module = importlib.import_module(f"sslvitals.metrics.{family}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
