"""Linear probes of image features: labels and image-disjoint splits, cached features, the classifier."""
