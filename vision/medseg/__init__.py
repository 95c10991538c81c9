"""mamba-suite medical segmentation (2D/3D) on MONAI: Decathlon data, Lightning task, evaluation, benchmark.

Modules (imported on use; MONAI is only loaded by them): `data` (DecathlonDataModule), `synthetic`
(the embedded default task), `tasks` (SegmentationTask), `metrics`, `evaluate` (`mamba-suite evaluate`)
and `bench` (`mamba-suite bench seg3d`). The networks live in `mambasuite.vision.models.umamba`.
"""
