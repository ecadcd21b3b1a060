"""micro_perception: stereo surgical-microscope perception for robotic ophthalmic surgery."""

__version__ = "0.1.0"
