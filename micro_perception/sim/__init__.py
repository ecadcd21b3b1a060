"""The virtual stereo surgical microscope: scenes, exact renderer, focal sweeps and datasets."""
