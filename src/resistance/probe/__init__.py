"""`resist probe`: measure proxies the way a user uses them, from several vantages.

Pure parts: :mod:`.check` (step outcomes and the verdict of one check),
:mod:`.exchange` (the sans-IO conversation of one check), :mod:`.canary`
(the canary's wire format and proofs), :mod:`.batch` (signed result batches),
:mod:`.verdict` (a proxy's status from evidence), :mod:`.rollup` (daily
histograms).  I/O: :mod:`.net` (the socket seam), :mod:`.runner` (one check
over the seam), :mod:`.spool` (the on-disk upload queue) and :mod:`.agent`.
"""
