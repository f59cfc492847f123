"""How many tokens per patient (data.max_seq_len) each BEHRT size is meant for, and the most it is sized for.

Attention costs O(T^2) time (and memory, without a fused kernel), so long windows belong to the larger, pod-tier
sizes; `ehrseq bench length` measures step time and peak memory per size and length. A module of its own, without
torch, so the job spec checks a window before anything heavy is imported.
"""

SEQ_LENS = {"small": (512, 2048), "medium": (1024, 2048), "large": (2048, 4096), "paper": (512, 2048)}
