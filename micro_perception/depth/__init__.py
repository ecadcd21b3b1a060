"""Depth estimation: the stereo teacher, depth from focus, and (issue 5) the depth network."""
