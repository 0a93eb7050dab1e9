"""Library code of darktable neural proxies: the darktable wrapper, data, training, evaluation."""
