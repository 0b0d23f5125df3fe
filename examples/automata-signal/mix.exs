defmodule AutomataSignal.MixProject do
  use Mix.Project

  def project do
    [
      app: :automata_signal,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: deps()
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  # No Hex packages: only Debian's Elixir is reachable where cairn's CI runs.
  defp deps do
    []
  end
end
