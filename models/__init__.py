"""Neural network families used as darktable proxies (slider-conditioned UNets and friends)."""
