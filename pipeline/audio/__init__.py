"""Audio building blocks for the VGGish extractor: torch log-mel front end, the network, PCA post-processing,
and a converter for TF-Hub VGGish variables. These modules import torch at the top; the extractor imports them
only inside load(), so importing the extractor registry stays cheap."""
