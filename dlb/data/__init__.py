"""The data a run sees: datasets read into memory, the loaders that batch and augment them on the device, label
noise."""
