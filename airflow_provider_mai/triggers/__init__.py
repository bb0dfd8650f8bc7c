"""Triggers of the MAI provider (the deferrable mode): loaded by the triggerer, never at DAG parse."""
