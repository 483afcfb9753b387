"""Data: catalogs, image reading, modalities and terminology, preprocessing and augmentation, the
ellipsoid phantom (``phantom``), label-map synthesis and the user's own training set."""
