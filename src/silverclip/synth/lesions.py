"""The 18 CT-RATE findings as visible correlates in the phantom: the registry of samplers and painters.

For each finding key (``silverclip.findings.FINDING_KEYS``) a *sampler* draws the lesion's parameters
for one scan (``sample_<key>(anat, d, rng) -> dict``; also read by the report writer: side, lobe,
size, device) and a *painter* draws it (``paint_<key>(vol, g, anat, p)``). ``d`` in [0, 1] is the
effective difficulty: 0 gives large, high-contrast lesions, 1 small, low-contrast ones. Sizes are in
mm and chosen so that at ``difficulty=0`` every correlate spans several 6 mm voxels (the ``demo``
preset). Lung lesions are multiplied by the lung alpha so they stay inside the lungs.

The code lives by region: :mod:`silverclip.synth.lesions_lung` (parenchyma and airways) and
:mod:`silverclip.synth.lesions_mediastinum` (heart, vessels, nodes, hernia, pleura, devices), with the
shared placement helpers in :mod:`silverclip.synth.placement`.
"""

from __future__ import annotations

from silverclip.synth import lesions_lung as lung
from silverclip.synth import lesions_mediastinum as med

SAMPLERS = {
    "medical_material": med.sample_medical_material,
    "arterial_wall_calcification": med.sample_arterial_wall_calcification,
    "cardiomegaly": med.sample_cardiomegaly,
    "pericardial_effusion": med.sample_pericardial_effusion,
    "coronary_artery_wall_calcification": med.sample_coronary_artery_wall_calcification,
    "hiatal_hernia": med.sample_hiatal_hernia,
    "lymphadenopathy": med.sample_lymphadenopathy,
    "emphysema": lung.sample_emphysema,
    "atelectasis": lung.sample_atelectasis,
    "lung_nodule": lung.sample_lung_nodule,
    "lung_opacity": lung.sample_lung_opacity,
    "pulmonary_fibrotic_sequela": lung.sample_pulmonary_fibrotic_sequela,
    "pleural_effusion": med.sample_pleural_effusion,
    "mosaic_attenuation_pattern": lung.sample_mosaic_attenuation_pattern,
    "peribronchial_thickening": lung.sample_peribronchial_thickening,
    "consolidation": lung.sample_consolidation,
    "bronchiectasis": lung.sample_bronchiectasis,
    "interlobular_septal_thickening": lung.sample_interlobular_septal_thickening,
}

# Painters with the common signature ``(vol, g, anat, p)``. Not here: cardiomegaly and pericardial
# effusion (drawn by Anatomy through heart_scale / paint_mediastinum), peribronchial thickening and
# bronchiectasis (both drawn by lesions_lung.paint_airways, which every scan calls).
PAINTERS = {
    "medical_material": med.paint_medical_material,
    "arterial_wall_calcification": med.paint_arterial_wall_calcification,
    "coronary_artery_wall_calcification": med.paint_coronary_artery_wall_calcification,
    "hiatal_hernia": med.paint_hiatal_hernia,
    "lymphadenopathy": med.paint_lymphadenopathy,
    "emphysema": lung.paint_emphysema,
    "atelectasis": lung.paint_atelectasis,
    "lung_nodule": lung.paint_lung_nodule,
    "lung_opacity": lung.paint_lung_opacity,
    "pulmonary_fibrotic_sequela": lung.paint_pulmonary_fibrotic_sequela,
    "pleural_effusion": med.paint_pleural_effusion,
    "mosaic_attenuation_pattern": lung.paint_mosaic_attenuation_pattern,
    "consolidation": lung.paint_consolidation,
    "interlobular_septal_thickening": lung.paint_interlobular_septal_thickening,
}
