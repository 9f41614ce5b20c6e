import os

import torch

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def random_pixels(batch, channels, size, dtype=torch.uint8, generator=None):
    high = 256 if dtype == torch.uint8 else 65536
    values = torch.randint(0, high, (batch, channels, size, size), generator=generator, dtype=torch.int64)
    return values.to(torch.int32).to(dtype) if dtype == torch.uint16 else values.to(dtype)
