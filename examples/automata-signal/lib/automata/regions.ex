defmodule Automata.Regions do
  @moduledoc "The fly.io regions the service runs in, in rollout order."

  @doc "Regions in deploy order (from config)."
  def rollout do
    Application.get_env(:automata_signal, :regions, [])
  end

  @doc "The region migrations run from."
  def primary, do: Application.get_env(:automata_signal, :primary_region)

  @doc "The fly app name of a region."
  def app_name(region) when is_binary(region), do: "automata-signal-" <> region
end
