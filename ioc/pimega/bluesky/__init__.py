"""Bluesky devices for the π-MEGA IOC (client side only: Channel Access, no server code).

- :mod:`pimega.bluesky.ophyd` — ``PimegaDetector`` for ophyd (v1): stock ``AreaDetectorCam``,
  ``HDF5Plugin`` (``AD_HDF5`` resource/datum documents), ``ROIPlugin``, ``StatsPlugin``.
- :mod:`pimega.bluesky.ophyd_async` — ``pimega_detector()`` for ophyd-async: an ``adcore``
  ``AreaDetector`` for step and fly scans (stream resource / stream datum documents).

Each module also has a reader that turns its documents back into frames. Both need the
``bluesky`` extra (``pip install pimega[bluesky]``); import the one you use.
"""
