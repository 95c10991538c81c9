"""mamba-suite speech: ConMamba CTC recognition and keyword spotting (torchaudio features, soundfile I/O).

Kept light: submodules (models, data, tasks, ...) are imported on use, so `import mambasuite.audio` pulls in
neither torchaudio nor timm.
"""
