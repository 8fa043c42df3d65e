"""stepdpo: Step-DPO, Step-Controlled DPO and plain DPO for long-chain reasoning."""

__version__ = "0.1.0"
