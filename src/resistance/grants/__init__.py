"""``resist grants``: who served people behind the block, and paying them in Bitcoin.

The award rule (``award``) is pure integer-satoshi arithmetic over daily
rollups; a round (``model``, ``rounds``) is plain data moving draft -> approved
-> paid(txid); payouts (``payout``, ``export``) are files a real wallet takes: an
unsigned PSBT, an Electrum pay-to-many list, BIP21 URIs. No private key ever
enters this package.
"""
