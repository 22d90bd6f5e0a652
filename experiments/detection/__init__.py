"""Object detection experiments: Pascal-VOC-format data, torchvision Faster R-CNN with convlab's
convolution variants and deformable RoI pooling, mAP metrics (``experiment=detection``)."""
from experiments.detection.data import VOCDataModule, collate, hflip, parse_voc_xml, resize, write_voc_folder
from experiments.detection.model import build_detector

__all__ = ["VOCDataModule", "collate", "hflip", "parse_voc_xml", "resize", "write_voc_folder", "build_detector"]
