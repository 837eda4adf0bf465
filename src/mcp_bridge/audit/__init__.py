"""The audit: events and the trail that records them (``trail``), the SQLite spool (``spool``), what is wrong with
it in words a user can act on (``spoolcheck``, light enough for the pre-``initialize`` path) and the shipper to Port
(``shipper``). Imports ``upstream``, ``governance``, ``auth`` and the base modules; never ``ide``, ``bridge`` or
``cli``."""
