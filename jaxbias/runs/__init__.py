"""The run layer: a run configuration, one preparation for single runs and sweeps, a Run value, workdirs.

- :class:`RunConfig` (:mod:`.config`): the frozen configuration, from keyword
  arguments, a TOML/JSON file or a run's ``config.json``;
- :meth:`RunConfig.load_data`: the run's :class:`~jaxbias.datasets.Dataset` (:mod:`jaxbias.datasets`);
- :func:`train`, :func:`sweep`, :func:`restore`, :class:`Run`, :class:`Sweep` (:mod:`.run`);
- :mod:`.measure`: evaluation, artifact report and heatmaps of a run;
- :func:`attribute` (:mod:`.attribution`): region-attribution maps of a dataset as an
  :class:`Attribution` value, which a training run takes as ``RunConfig(maps=...)``;
- the workflows built on these: :func:`correct` (:mod:`.correction`, configured by a
  :class:`CorrectionConfig`), FMD unlearning (:mod:`.unlearning`), the demo (:mod:`.demo`)
  and keyword-argument shortcuts (:mod:`.recipes`).

Data flows down: the CLI, the demo and the experiments call this layer; it
calls the engine, the methods, the models and the measurements
(:mod:`jaxbias.evaluation`), never the other way round.
"""
from jaxbias.runs.attribution import Attribution, RegionConfig, attribute
from jaxbias.datasets import Dataset
from jaxbias.runs.config import DEMO_CHANNELS, FULL_CHANNELS, RunConfig
from jaxbias.runs.run import (Prepared, Run, Sweep, final_eval, fit_method_state, make_module, prepare, restore, sweep,
                             train)
from jaxbias.runs.correction import CorrectionConfig, correct

__all__ = ["Attribution", "CorrectionConfig", "RegionConfig", "attribute", "correct", "DEMO_CHANNELS", "FULL_CHANNELS", "Dataset", "Prepared", "Run", "RunConfig", "Sweep", "final_eval",
           "fit_method_state", "make_module", "prepare", "restore", "sweep", "train"]
