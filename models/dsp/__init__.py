"""Signal processing: waveform blocks → windows → feature rows (no model, no I/O).

``windowing`` cuts blocks into overlapping windows, ``features`` / ``mfcc`` / ``envelope`` compute
the vibration, sound and bearing-envelope features, ``extract`` turns a pipeline's feature
settings into an extractor with a contract that model bundles are checked against.
"""
