# Workflows exist when importing this file constructs them (MooseStack's convention).
from app.workflows.data_processing import data_processing
from app.workflows.example import example

__all__ = ["data_processing", "example"]
