"""Files generated from the IOC's PVGroups: Phoebus screens (``opi/``) and the PV list and
autosave request files (``db/``), written by ``pimega opi`` and ``pimega db``.

Generated, not hand-written, so that a PV renamed or added in ``pimega.iocs`` shows up in a
diff of the checked-in files (the tests regenerate and compare them).
"""
