"""iCaRL (Rebuffi et al. 2017; Mammoth's ``icarl``).

- Memory: at most ``buffer_size`` exemplars, ``buffer_size // classes seen`` per class. At a
  task's end each class of the task picks its exemplars by herding on the L2-normalised features
  (``continual.herding``); the other classes keep the first ones of their herding order. The
  exemplars are training ids: a task trains on its own examples plus every
  exemplar (``training_indices``, as Mammoth adds the buffer to the task's data).
- Loss: binary cross-entropy with logits over every class; the targets of the classes seen
  before this task are the previous model's sigmoid outputs (distillation), the others one-hot.
- Classifier: nearest mean of exemplars. A class's mean is the normalised mean of its exemplars'
  normalised features (with their mirror images on datasets that flip, as the paper on CIFAR);
  a test example goes to the class whose mean is nearest. Means are recomputed lazily after
  training moved the features. Before the first task ends there are no exemplars and the logits
  decide.

Differences from Mammoth: Mammoth also averages flipped features on MNIST; its own weight decay
(``opt_wd``, an L2 term in the loss) is the optimizer's ``weight_decay`` here (twice its value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sparseforge.continual.buffer import bytes_per_sample
from sparseforge.continual.herding import herding_order
from sparseforge.data.transforms import flips_horizontally
from sparseforge.methods.base import METHODS
from sparseforge.methods.distillation import DistillationMethod
from sparseforge.models.parts import classifier, embed
from sparseforge.options import check
from sparseforge.utils.distributed import broadcast_


@METHODS.register("icarl")
class ICaRL(DistillationMethod):
    @dataclass
    class Options(DistillationMethod.Options):
        #: Exemplars kept over all classes (Mammoth's usual 500).
        buffer_size: int = 500

        def __post_init__(self) -> None:
            check("method.buffer_size", self.buffer_size >= 1, f"must be >= 1, got {self.buffer_size}")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_classes = classifier(self.model, "iCaRL").out_features  # fails at build without a head
        self.exemplars: dict[int, torch.Tensor] = {}  # class -> training ids, herding order
        self._class_means: tuple[list[int], torch.Tensor] | None = None

    def check_setup(self, datamodule) -> None:
        super().check_setup(datamodule)
        n = datamodule.dataset.num_classes
        size = self.options.buffer_size
        check("method.buffer_size", size >= n, f"{size} exemplars leave none for some of the {n} classes", f">= {n}")

    # -- training ---------------------------------------------------------------------------------
    def training_indices(self, task, tasks) -> torch.Tensor:
        if not self.exemplars:
            return task.train_index
        return torch.unique(torch.cat([task.train_index, *self.exemplars.values()]))

    def observe(self, batch) -> torch.Tensor:
        self._class_means = None  # this step moves the features
        logits = self(batch.x)
        self.track_accuracy(logits, batch.y)
        targets = F.one_hot(batch.y, logits.shape[1]).to(logits.dtype)
        past = self.past_classes(logits.shape[1], logits.device)
        if self.previous.ready and bool(past.any()):
            targets = torch.where(past, torch.sigmoid(self.previous(batch.x)), targets)
        return F.binary_cross_entropy_with_logits(logits, targets)

    def end_task(self, task) -> None:
        super().end_task(task)
        self.update_exemplars(task.classes, task.train_index)
        self._class_means = None

    # -- exemplars ----------------------------------------------------------------------------------
    def update_exemplars(self, classes, train_index: torch.Tensor) -> None:
        """Herd the exemplars of ``classes`` (from ``train_index`` and their old exemplars); cut the
        other classes' sets to the new per-class share."""
        images, _ = self.datamodule.locate(train_index)  # ids are not image positions in domain-IL
        labels = self.datamodule.train_data.y[images]
        per_class = self.options.buffer_size // len(set(self.exemplars) | set(classes))
        for c in sorted(set(self.exemplars) | set(classes)):
            if c in classes:
                old = self.exemplars.get(c, torch.empty(0, dtype=torch.long))
                candidates = torch.unique(torch.cat([train_index[labels == c], old]))
                order = herding_order(self.normalised_features(candidates), per_class).cpu()
                self.exemplars[c] = candidates[order]
            else:
                self.exemplars[c] = self.exemplars[c][:per_class]
        broadcast_(self.exemplars.values())  # the same on every rank (they agree already, barring float noise)

    @torch.no_grad()
    def normalised_features(self, positions: torch.Tensor, mirrored: bool = False) -> torch.Tensor:
        """L2-normalised features of these training ids (eval mode, no augmentation)."""
        was_training = self.model.training
        self.model.eval()
        parts = []
        for chunk in positions.split(self.datamodule.eval_batch_size):
            x, _ = self.training_examples(chunk)
            parts.append(F.normalize(embed(self.model, x.flip(-1) if mirrored else x), dim=1))
        self.model.train(was_training)
        return torch.cat(parts)

    # -- nearest mean of exemplars ------------------------------------------------------------------
    def class_means(self) -> tuple[list[int], torch.Tensor]:
        classes = sorted(self.exemplars)
        views = [False, True] if flips_horizontally(self.datamodule.dataset.train_transform) else [False]
        means = []
        for c in classes:
            mean = sum(self.normalised_features(self.exemplars[c], mirrored=m).mean(0) for m in views) / len(views)
            means.append(F.normalize(mean, dim=0))
        return classes, torch.stack(means)

    @torch.no_grad()
    def predict_scores(self, x: torch.Tensor) -> torch.Tensor:
        if not self.exemplars:
            return self(x)
        if self._class_means is None:
            self._class_means = self.class_means()
        classes, means = self._class_means
        features = F.normalize(embed(self.model, x), dim=1)
        scores = x.new_full((len(x), self.num_classes), float("-inf"))
        scores[:, classes] = -torch.cdist(features.float(), means.float()).square()
        return scores

    # -- state and summary --------------------------------------------------------------------------
    def method_state(self) -> dict[str, Any]:
        return {**super().method_state(), "exemplars": {c: i.clone() for c, i in self.exemplars.items()}}

    def load_method_state(self, state: dict[str, Any]) -> None:
        super().load_method_state(state)
        self.exemplars = {int(c): i.clone() for c, i in state.get("exemplars", {}).items()}
        self._class_means = None

    def summary_section(self, trainer) -> dict[str, Any]:
        per_sample = bytes_per_sample(trainer.datamodule.train_data.raw_shape)
        samples = sum(len(i) for i in self.exemplars.values())
        return {
            "replay": {
                "policy": "herding",
                "capacity": self.options.buffer_size,
                "samples": samples,
                "bytes": samples * per_sample,
                "bytes_per_sample": per_sample,
            }
        }
