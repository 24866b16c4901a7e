"""The training engine every command shares: the LightningModule (`module`), optimizer and schedule
(`optim`), the one Trainer factory (`trainer`), its callbacks, the assembly of a recipe into module
and data (`assemble`), the reader and rebuilder of every cnnlab checkpoint (`checkpoint`), the
training run (`run`), transfer learning through it (`finetune`) and test-time augmentation through a Trainer (`tta`)."""
