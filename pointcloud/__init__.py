"""Point-cloud side: sparse-conv backbone, point structures, superpoints, RG-SAN, MDIN, 3D rendering."""
