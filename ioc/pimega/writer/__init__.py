"""Files: areaDetector NDFile naming, the SWMR HDF5/NeXus writer, bitshuffle-LZ4 chunks."""
