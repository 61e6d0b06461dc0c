"""Report stage: the HTML report, figures, error analysis, Grad-CAM."""
