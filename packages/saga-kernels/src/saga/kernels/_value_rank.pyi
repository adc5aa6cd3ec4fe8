"""Type stub of the compiled value-ranking module (csrc/value_rank.cpp)."""

import numpy as np
import numpy.typing as npt

BUILD_INFO: str

def eta_select(next_use: npt.NDArray[np.float64], reuse_prob: npt.NDArray[np.float64],
               depth: npt.NDArray[np.int64], last_access: npt.NDArray[np.float64], now: float,
               k: int, block_tokens: float, dense_flops: float, attn_flops: float,
               size_bytes: float, min_until: float,
               ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]: ...
