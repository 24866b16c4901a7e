"""The only place that renders: one module per command (tables on the console, PNG plots), over
shared console (`console`) and plot (`plots`) helpers. Renderers take results as plain data."""
