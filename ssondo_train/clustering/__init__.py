"""k-means over teacher embeddings: the cluster ids behind Balanced Data Sampling."""

from ssondo_train.clustering.kmeans import KMeansResult, assign, cluster_metrics, fit_kmeans

__all__ = ["KMeansResult", "assign", "cluster_metrics", "fit_kmeans"]
