"""A patient's visits as BEHRT input: `[CLS] static codes v1 codes [SEP] v2 codes [SEP] ...` plus per-token features.

Each token carries the patient's age at that visit, a segment id alternating per visit (A/B, as BERT's
sentence ids) and the visit's index as its position, so the model sees visit structure and time. Static
codes (sex, ...: no time) come right after [CLS] in a segment of their own (STATIC_SEGMENT), at position 0
with [CLS]'s age; truncation drops old visits, never them. `ehrseq.data.stream.encode` writes this layout into
the token cache; the models read it.

Ages are in whole MONTHS, as in BEHRT: finer than years, which matters for children whose care changes
month by month, and clipped to MAX_AGE_MONTHS (120 years) so the age embedding table stays bounded.
"""

MAX_AGE_MONTHS = 1440
STATIC_SEGMENT = 2  # visits alternate segments 0 and 1
