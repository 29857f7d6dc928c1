"""nas: NNI-driven architecture search over the 720-ConvNet space on condensed proxies (DM section 3.6).

``python -m nas.search`` ranks the space on a proxy, ``python -m nas.groundtruth`` measures the whole-data accuracy of
the proxies' top architectures, ``python -m reports.nas`` renders Table 5 and Figure F8. See docs/nas.md.
"""
