"""JupyterLab widgets (ipywidgets): :class:`CaseExplorer` and :class:`AuditDashboard`.

Needs the ``widgets`` extra (``pip install medseg-xai[widgets]``). Pictures are matplotlib
figures rendered to PNG, so no ipympl or other front-end extension beyond ipywidgets is needed.
"""

from medseg_xai.widgets.case_explorer import CaseExplorer
from medseg_xai.widgets.dashboard import AuditDashboard
from medseg_xai.widgets.options import ExplorerOptions

__all__ = ["AuditDashboard", "CaseExplorer", "ExplorerOptions"]
