-- Legacy version 20260203100000 (dbmate): the shipment's vehicle type, for load-to-tonne
-- conversions.

ALTER TABLE fact_material_shipment ADD COLUMN vehicle_type VARCHAR(100);

CREATE INDEX idx_fact_material_shipment_vehicle_type
    ON fact_material_shipment (vehicle_type)
    WHERE vehicle_type IS NOT NULL;

COMMENT ON COLUMN fact_material_shipment.vehicle_type IS 'Vehicle type from vehicleObject (e.g., "Tandem", "Tri-axle"). Used for load-to-tonne conversions.';
