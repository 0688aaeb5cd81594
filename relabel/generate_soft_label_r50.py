"""PRISM's relabel preset for a ResNet-50 student on ImageNet-1k: teachers resnet50,
mobilenet_v2, alexnet, shufflenet_v2_x0_5 with ImageNet weights (--candidate-number N keeps the
first N), ensemble rule primary-weighted; cutmix, fp16 labels, 300 epochs of 224 px crops.
Everything else is the generic relabel/generate_soft_label.py (see its --help).

    python relabel/generate_soft_label_r50.py --data DISTILLED --fkd-path STORE --candidate-number 4
"""

from relabel.generate_soft_label import Preset, main
from softlabel.errors import run_main

PRESET = Preset("r50", ["resnet50", "mobilenet_v2", "alexnet", "shufflenet_v2_x0_5"], "primary-weighted")

if __name__ == "__main__":
    run_main(lambda: main(PRESET))
